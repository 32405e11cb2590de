"""Model cards (README.md) of converted and uptrained checkpoints, built as `huggingface_hub.ModelCardData` /
`ModelCard` and checked against the Hub's metadata spec before they are written (`check_card`).

`ModelCard.validate` posts the card to the Hub's validator, so it needs the network; `check_card` checks the same
metadata offline: the card parses back through `ModelCard`, `base_model` is a Hub id, `base_model_relation` one of the
Hub's four, `license` one of the Hub's identifiers (`other` with `license_name` and `license_link`), `pipeline_tag`
one of the Hub's tasks, and the `model-index` parses back into `EvalResult`s with numeric values.

Where the metadata comes from (`source_provenance`): `base_model` is the Hub id the model was converted from; for a
local source, the Hub id recorded in its config (`gqa_source` of a checkpoint hf-gqa wrote, `_name_or_path` of one
transformers 4 saved), its hf-gqa card, or the Hub cache folder it was read from; the card says when there is none.
`license` (with `license_name` / `license_link`), `datasets` and `language` are inherited from the source's card:
Llama 2, Gemma and other models carry their own terms, which apply to what is derived from them.
"""

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData, hf_hub_download
from huggingface_hub.repocard_data import model_index_to_eval_results
from huggingface_hub.utils import HFValidationError, validate_repo_id

from ..errors import HfGqaError
from ..registry import resolve
from .sizes import weighted_kv_parameters

KIND_NAMES = {
    "encoder": "encoder self-attention",
    "decoder_self": "decoder self-attention",
    "cross": "cross-attention",
}
# The Hub's model-tree relations. A GQA conversion re-derives the key/value projections of one base model (mean-pooled
# or fitted heads, a new architecture) and uptraining trains it further: both are "finetune". Not "quantized" (the
# precision is the source's), not "merge" (one parent), not "adapter" (full weights, not adapter weights on the base).
RELATIONS = ("adapter", "merge", "quantized", "finetune")
RELATION = "finetune"
# The Hub's licence identifiers (https://huggingface.co/docs/hub/repositories-licenses); any other is "other" with
# license_name / license_link.
HUB_LICENSES = frozenset(
    """apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0 bigcode-openrail-m
    afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear c-uda cc cc0-1.0 cc-by-2.0 cc-by-2.5
    cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0 cc-by-nc-nd-3.0
    cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cdla-sharing-1.0 cdla-permissive-1.0
    cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1 eupl-1.2 agpl-3.0 gfdl gpl gpl-2.0 gpl-3.0
    lgpl lgpl-2.1 lgpl-3.0 isc h-research intel-research lppl-1.3c ms-pl apple-ascl apple-amlr mpl-2.0 odc-by odbl
    openrail++ osl-3.0 postgresql ofl-1.1 ncsa unlicense zlib pddl lgpl-lr deepfloyd-if-license
    fair-noncommercial-research-license llama2 llama3 llama3.1 llama3.2 llama3.3 llama4 gemma unknown other""".split()
)
# The Hub's tasks (pipeline tags) an hf-gqa checkpoint can have, and the others a source card may name.
HUB_PIPELINE_TAGS = frozenset(
    """text-generation text2text-generation summarization translation fill-mask feature-extraction
    text-classification token-classification question-answering image-classification image-feature-extraction
    image-text-to-text any-to-any sentence-similarity zero-shot-classification other""".split()
)
_LICENSE_NAME = re.compile(r"^[a-z0-9.-]+$")
_HF_GQA_URL = "https://github.com/hf-gqa/hf-gqa"


@dataclass(frozen=True)
class Provenance:
    """What a card inherits from its source: the Hub id (`base_model`, and where it was found), the licence, the
    datasets and languages of the source's card."""

    base_model: str | None = None
    found_in: str = ""
    license: str | None = None
    license_name: str | None = None
    license_link: str | None = None
    datasets: tuple[str, ...] = ()
    language: tuple[str, ...] = ()

    @classmethod
    def from_metadata(cls, metadata: dict, base_model: str | None, found_in: str) -> "Provenance":
        """The licence, datasets and languages of a card's metadata, with `base_model` found elsewhere."""
        license_, name, link = _license(metadata, base_model)
        return cls(
            base_model,
            found_in,
            license_,
            name,
            link,
            _strings(metadata.get("datasets")),
            _strings(metadata.get("language")),
        )


def is_hub_id(text: str | None) -> bool:
    """Whether `text` reads as a Hub repo id ("org/name" or "name") and is no local path."""
    if not text or text.startswith((".", "/", "~")) or text.endswith(".gguf") or Path(text).exists():
        return False
    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def source_card_metadata(source: str | None) -> dict:
    """The metadata of the source's own card (README.md of a local folder, or of a Hub repo: from the cache offline),
    or {} when it has none or it cannot be read."""
    if not source:
        return {}
    path = Path(str(source)).expanduser()
    readme = path / "README.md" if path.is_dir() else None
    if readme is None and is_hub_id(str(source)):
        try:
            readme = Path(hf_hub_download(str(source), "README.md"))
        except Exception:  # offline cache miss, no card, gated, network: the card then names no inherited licence
            return {}
    if readme is None or not readme.is_file():
        return {}
    try:
        return ModelCard.load(readme, ignore_metadata_errors=True).data.to_dict()
    except Exception:  # a card whose YAML does not parse: nothing inherited from it
        return {}


def source_provenance(source: str | None, metadata: dict | None = None) -> Provenance:
    """The provenance of a model converted (or uptrained) from `source` (see the module's docstring)."""
    metadata = source_card_metadata(source) if metadata is None else metadata
    base_model, found_in = _base_model(str(source) if source else None, metadata)
    return Provenance.from_metadata(metadata, base_model, found_in)


def _base_model(source: str | None, metadata: dict) -> tuple[str | None, str]:
    if source is None:
        return None, ""
    if is_hub_id(source):
        return source, "the Hub id it was converted from"
    path = Path(source).expanduser()
    config = {}
    if (path / "config.json").is_file():
        try:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            config = {}
    if is_hub_id(config.get("gqa_source")):  # a checkpoint hf-gqa converted from a Hub model
        return config["gqa_source"], "recorded in the source's config (`gqa_source`)"
    tags = _strings(metadata.get("tags"))
    bases = _strings(metadata.get("base_model"))
    if "hf-gqa" in tags and len(bases) == 1 and is_hub_id(bases[0]):  # hf-gqa's own card: the same original model
        return bases[0], "recorded in the source's hf-gqa model card (`base_model`)"
    if is_hub_id(config.get("_name_or_path")):  # written by transformers 4's save_pretrained
        return config["_name_or_path"], "recorded in the source's config (`_name_or_path`)"
    cached = re.search(r"models--([^/\\]+?)--([^/\\]+)[/\\]snapshots[/\\]", str(path.resolve()) + "/")
    if cached and is_hub_id(f"{cached[1]}/{cached[2]}"):
        return f"{cached[1]}/{cached[2]}", "the Hub cache folder the source was read from"
    return None, ""


def _strings(value) -> tuple[str, ...]:
    if value is None:
        return ()
    return tuple(str(v) for v in (value if isinstance(value, list | tuple) else [value]))


def _license(metadata: dict, base_model: str | None) -> tuple[str | None, str | None, str | None]:
    """(license, license_name, license_link) as the Hub takes them: an identifier the Hub does not know becomes
    `other` named after it, and a link relative to the source repo is made absolute when the repo is known."""
    license_ = metadata.get("license")
    name, link = metadata.get("license_name"), metadata.get("license_link")
    if license_ is None:
        return None, None, None
    if isinstance(license_, list | tuple):
        license_ = license_[0] if len(license_) == 1 else "other"
    license_ = str(license_).strip().lower()
    if license_ not in HUB_LICENSES:
        name = name or license_
        license_ = "other"
    if name is not None:  # the Hub's license_name is a slug: "Llama 2 Community License" -> llama-2-community-license
        name = re.sub(r"[^a-z0-9.-]+", "-", str(name).lower()).strip("-") or None
    if link and base_model and not re.match(r"^[a-z]+://", str(link)):
        link = f"https://huggingface.co/{base_model}/blob/main/{str(link).lstrip('./')}"
    if license_ == "other" and not link and base_model:
        link = f"https://huggingface.co/{base_model}"  # the source's page states its terms
    return license_, name, link


def pipeline_tag(config: dict) -> str:
    """The Hub task of a checkpoint with this config: the Hub cannot infer one for hf-gqa's own model types."""
    if config.get("is_encoder_decoder"):
        return "text2text-generation"
    architecture = (config.get("architectures") or [""])[0]
    if architecture.endswith("ForImageClassification"):
        return "image-classification"
    if str(config.get("model_type", "")).startswith("vit"):
        return "image-feature-extraction"
    return "text-generation"


def _auto_class(config: dict) -> str:
    tag = pipeline_tag(config)
    return {
        "text2text-generation": "AutoModelForSeq2SeqLM",
        "image-classification": "AutoModelForImageClassification",
        "image-feature-extraction": "AutoModel",
    }.get(tag, "AutoModelForCausalLM")


def _tags(config: dict, folded: bool) -> list[str]:
    tags = ["hf-gqa", "gqa", "grouped-query-attention"]
    variant = config.get("gqa_variant")
    weights = config.get("gqa_kv_weights")
    mean_pooled = weights == "mean" or (folded and variant == "simgqa")  # SimGQA regrouped while uptraining
    if not mean_pooled and (weights or folded or str(variant).endswith("wgqa")):
        tags.append("wgqa")
    tags += [str(variant)] if variant else []
    tags.append(str(config["model_type"]))
    return list(dict.fromkeys(tags))


def _card_data(config: dict, provenance: Provenance, folded: bool = False, **extra) -> ModelCardData:
    datasets = list(dict.fromkeys([*provenance.datasets, *extra.pop("datasets", [])]))
    return ModelCardData(
        base_model=provenance.base_model,
        base_model_relation=RELATION if provenance.base_model else None,
        license=provenance.license,
        license_name=provenance.license_name,
        license_link=provenance.license_link,
        library_name="transformers",
        pipeline_tag=pipeline_tag(config),
        tags=_tags(config, folded),
        datasets=datasets or None,
        language=list(provenance.language) or None,
        **extra,
    )


def _provenance_lines(source: str | None, provenance: Provenance) -> list[str]:
    """What the card says about `base_model` and the licence."""
    lines = []
    if provenance.base_model:
        lines.append(
            f"- Base model: [`{provenance.base_model}`](https://huggingface.co/{provenance.base_model}) "
            f"({provenance.found_in}); `base_model_relation: {RELATION}`: the weights are derived from that one model "
            "(not quantized, merged, or an adapter)."
        )
    else:
        lines.append(
            f"- Base model: none recorded. The source `{source or 'a model in memory'}` is a local checkpoint with no "
            "Hub id in its config or card, so this card sets no `base_model`; add it by hand if you know it."
        )
    if provenance.license:
        terms = f"`{provenance.license}`"
        if provenance.license_name:
            terms += f" ({provenance.license_name}"
            terms += f", {provenance.license_link})" if provenance.license_link else ", no link to its terms given)"
        lines.append(
            f"- License: {terms}, inherited from the source's model card: its terms apply to this derived model."
        )
    else:
        lines.append(
            "- License: none found (the source has no card naming one, or its card could not be read); check the "
            "source's terms before you share this model."
        )
    return lines


def _use_section(config: dict, location: str) -> list[str]:
    """The card's `## Use` section: how to load the checkpoint at `location`, with and without hf-gqa."""
    auto = _auto_class(config)
    lines = ["## Use", "", "```python"]
    if config.get("auto_map") is not None:
        lines += [
            "# with hf-gqa installed (pip install hf-gqa):",
            "import hf_gqa",
            f"from transformers import {auto}",
            f'model = {auto}.from_pretrained("{location}")',
            "",
            "# without hf-gqa: the modeling code ships with the checkpoint",
            f'model = {auto}.from_pretrained("{location}", trust_remote_code=True)',
        ]
    else:
        lines += [
            f"# a stock {config['model_type']} checkpoint: plain transformers loads it, no hf-gqa needed",
            f"from transformers import {auto}",
            f'model = {auto}.from_pretrained("{location}")',
        ]
    return [*lines, "```", "", "Requires `transformers>=5.24,<6`.", ""]


def _render(data: ModelCardData, body: list[str]) -> str:
    """The card's text, checked by `check_card`."""
    text = f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)
    check_card(text)
    return text


def check_card(text: str) -> ModelCard:
    """Parse `text` as a model card and check its metadata against the Hub's spec, offline (see the module's
    docstring); raise HfGqaError naming the first problem, else return the card."""
    try:
        card = ModelCard(text)
    except ValueError as error:
        raise HfGqaError(f"model card: {str(error).strip().splitlines()[0]}") from None
    meta = card.data.to_dict()
    problems = []
    for base in _strings(meta.get("base_model")):
        if not is_hub_id(base):
            problems.append(f"base_model {base!r} is not a Hub id")
    relation = meta.get("base_model_relation")
    if relation is not None and (relation not in RELATIONS or not meta.get("base_model")):
        problems.append(f"base_model_relation {relation!r} needs a base_model and one of {', '.join(RELATIONS)}")
    license_ = meta.get("license")
    if license_ is not None and license_ not in HUB_LICENSES:
        problems.append(f"license {license_!r} is not a Hub licence identifier (use other + license_name)")
    if license_ == "other" and not meta.get("license_name"):
        problems.append("license other needs a license_name (and a license_link to the terms)")
    if meta.get("license_name") is not None and not _LICENSE_NAME.match(str(meta["license_name"])):
        problems.append(f"license_name {meta['license_name']!r} must be lowercase letters, digits, '-' or '.'")
    if meta.get("pipeline_tag") is not None and meta["pipeline_tag"] not in HUB_PIPELINE_TAGS:
        problems.append(f"pipeline_tag {meta['pipeline_tag']!r} is not a Hub task")
    for key in ("tags", "datasets", "language"):
        value = meta.get(key)
        if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            problems.append(f"{key} must be a list of strings")
    if "model-index" in meta:
        try:
            _, results = model_index_to_eval_results(meta["model-index"])
        except (KeyError, TypeError, ValueError) as error:
            problems.append(f"model-index does not parse ({error})")
        else:
            for result in results:
                value = result.metric_value
                if not isinstance(value, int | float) or not math.isfinite(value):
                    problems.append(f"model-index metric {result.metric_type!r} is not a finite number")
    if problems:
        raise HfGqaError(f"model card: {problems[0]}")
    return card


def model_card(
    config: dict,
    kv_heads: dict[str, tuple[int | None, int]],
    parameters: tuple[int, int] | None = None,
    location: str = "path/to/this/folder",
    approximate: str | None = None,
    folded_from: str | None = None,
    provenance: Provenance | None = None,
) -> str:
    """A README.md (model card) for a converted checkpoint: metadata for the Hub (base model, relation, inherited
    licence, task, tags), then source, variant, groups, init, blocks, hf-gqa version, caveats and how to load it.
    A WGQA training form says how to fold it; `folded_from` names the training form a folded checkpoint came from."""
    source = config.get("gqa_source")
    if provenance is None:
        provenance = source_provenance(folded_from or source)
    weights = config.get("gqa_kv_weights")
    data = _card_data(config, provenance, folded=bool(folded_from))
    lines = [f"# {config['model_type']} converted with hf-gqa", ""]
    lines.append(
        f"This checkpoint was converted from `{source or 'a model in memory'}` "
        f"(`{config.get('gqa_source_model_type')}`) to grouped-query attention with "
        f"[hf-gqa]({_HF_GQA_URL}) {config.get('hf_gqa_version')}. "
        "It has not been uptrained yet unless stated below: expect a quality drop until it is "
        "(Ainslie et al., 2023 uptrain for ~5% of the pre-training steps)."
    )
    lines += ["", *_provenance_lines(source, provenance)]
    lines += ["", "| | |", "|---|---|", f"| variant | `{config.get('gqa_variant')}` |"]
    lines.append(f"| K/V init | `{config.get('gqa_init')}` |")
    for kind, (before, after) in kv_heads.items():
        change = f"{before} -> {after}" if before is not None else f"{after}"
        lines.append(f"| {KIND_NAMES.get(kind, kind)} | {change} key/value heads |")
    if weights == "mean":
        lines.append("| K/V heads | each group the plain mean of its heads: no weights (removed by `hf-gqa fold`) |")
    elif weights:
        extra = weighted_kv_parameters(config)
        lines.append(f"| WGQA K/V weights | `{weights}`, {extra:,} extra parameters (removed by `hf-gqa fold`) |")
    if parameters:
        lines.append(f"| parameters | {parameters[0]:,} -> {parameters[1]:,} |")
    lines.append(f"| hf-gqa version | {config.get('hf_gqa_version')} |")
    if approximate:
        lines += ["", f"Note: {approximate}."]
    if weights == "mean":
        lines += [
            "",
            "This is the **training form of SimGQA regrouped while uptraining** (Chinnakonduru & Mohapatra, 2024): "
            "it keeps every original key/value head, and each group's key/value head is the plain mean of the heads "
            "it holds (the paper's: no weights; the KV cache already holds the grouped heads). Uptrain it with the "
            "`SimGQARegroup` hook (`hf_gqa.variants.simgqa`), which regroups the heads by similarity, then fold it "
            f"into plain projections with `hf-gqa fold {location} -o OUT` (or `hf_gqa.fold(model)`): the logits stay "
            "the same.",
        ]
    elif weights:
        lines += [
            "",
            "This is the **WGQA training form** (Chinnakonduru & Mohapatra, 2024): it keeps every original key/value "
            "head, and learned weights combine each group's heads into the key/value head its queries read (the KV "
            "cache already holds the grouped heads). Uptrain it, then fold the weights into plain projections with "
            f"`hf-gqa fold {location} -o OUT` (or `hf_gqa.fold(model)`): the logits stay the same.",
        ]
    if folded_from and config.get("gqa_variant") == "simgqa":
        lines += [
            "",
            f"Folded with `hf-gqa fold` from `{folded_from}`, the training form of SimGQA regrouped while uptraining: "
            "each group's key/value head, the plain mean of the heads it held, is now a plain projection, and the "
            "logits are those of the training form.",
        ]
    elif folded_from:
        lines += [
            "",
            f"Folded from the WGQA training form `{folded_from}` with `hf-gqa fold`: its learned key/value weights "
            "are now part of the grouped projections, and the logits are those of the training form.",
        ]
    lines += ["", *_use_section(config, location)]
    return _render(data, lines)


# --- uptrained checkpoints: the recipe's results in a model-index ----------------------------------------------------

_ROUGE = (("rouge1", "ROUGE-1"), ("rouge2", "ROUGE-2"), ("rougeL", "ROUGE-L"), ("rougeLsum", "ROUGE-Lsum"))


def eval_results(results: dict) -> list[EvalResult]:
    """The measured results of an uptraining run (`all_results.json`) as `EvalResult`s: ROUGE-1/2/L/Lsum (F x 100),
    the perplexity of the reference summaries (exp of the eval loss, teacher-forced), and the model's KV-cache bytes
    per token (per cache: `self`, T5's `cross`), all on the run's evaluation split."""
    config = results.get("config") or {}
    if config.get("dataset_name"):
        dataset_type, dataset_name = str(config["dataset_name"]), str(config["dataset_name"])
    else:
        dataset_type, dataset_name = "local", Path(str(config.get("validation_file") or "eval")).name
    common = dict(
        task_type="summarization",
        dataset_type=dataset_type,
        dataset_name=dataset_name,
        dataset_config=config.get("dataset_config_name"),
        dataset_split=config.get("eval_split") if config.get("dataset_name") else None,
    )
    out = [
        EvalResult(**common, metric_type=key, metric_name=name, metric_value=float(results[f"eval_{key}"]))
        for key, name in _ROUGE
        if _finite(results.get(f"eval_{key}"))
    ]
    loss = results.get("eval_loss")
    if _finite(loss) and loss < 700:  # exp(700) is about the largest float
        out.append(
            EvalResult(**common, metric_type="perplexity", metric_name="Perplexity", metric_value=math.exp(loss))
        )
    for cache, size in ((results.get("model") or {}).get("kv_cache_bytes_per_token") or {}).items():
        out.append(
            EvalResult(
                **common,
                metric_type=f"kv_cache_bytes_per_token_{cache}",
                metric_name=f"KV cache bytes per token ({cache})",
                metric_value=int(size),
            )
        )
    return out


def _finite(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def uptrained_card(
    config: dict, results: dict, location: str, provenance: Provenance | None = None, model_name: str | None = None
) -> str:
    """A README.md for the recipe's final model (inference form): the conversion, the run's settings and its
    measured results as a `model-index`."""
    run = results.get("config") or {}
    start = run.get("model_name_or_path")
    if provenance is None:
        provenance = source_provenance(start)
    model_name = model_name or location
    datasets = [str(run["dataset_name"])] if run.get("dataset_name") and is_hub_id(str(run["dataset_name"])) else []
    measured = eval_results(results)
    data = _card_data(
        config,
        provenance,
        datasets=datasets,
        model_name=model_name if measured else None,
        eval_results=measured or None,
    )
    variant = run.get("convert_variant") or config.get("gqa_variant")
    data_source = run.get("dataset_name") or run.get("train_file")
    lines = [f"# {Path(model_name).name}: {config['model_type']} uptrained with hf-gqa", ""]
    lines.append(
        f"`{start}` with grouped-query attention (`{variant}`), uptrained with [hf-gqa]({_HF_GQA_URL}) "
        f"{results.get('hf_gqa_version')}'s summarization recipe on `{data_source}` for "
        f"{results.get('train_steps')} optimizer steps; this is its inference form (LoRA merged, WGQA folded)."
    )
    lines += ["", *_provenance_lines(start, provenance), "", "## Results", ""]
    lines += [
        f"On `{common_name(run)}` ({results.get('eval_samples', '?')} examples):",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for result in measured:
        value = result.metric_value
        lines.append(
            f"| {result.metric_name} | {value:,} |"
            if isinstance(value, int)
            else f"| {result.metric_name} | {value:.4g} |"
        )
    if results.get("decode_tokens_per_second"):
        batch = results.get("decode_batch_size")
        lines.append(f"| decode tokens/s (batch {batch}) | {results['decode_tokens_per_second']:.4g} |")
    lines += [
        "",
        "ROUGE is the F-measure x 100 (rouge-score, Porter stemming unless `use_stemmer` is off); the perplexity is "
        "exp of the teacher-forced loss on the reference summaries.",
        "",
        "## Training",
        "",
        "The run's configuration (`hf-gqa` recipe options and the settings resolved at run time):",
        "",
        "```json",
        json.dumps({k: v for k, v in run.items() if v is not None}, indent=2, default=str),
        "```",
        "",
        *_use_section(config, location),
    ]
    return _render(data, lines)


def common_name(run: dict) -> str:
    """The evaluation data of a run, as the card names it."""
    if run.get("dataset_name"):
        return f"{run['dataset_name']} {run.get('eval_split', 'validation')}"
    return str(run.get("validation_file") or "the evaluation split")


# --- a folder's card, for upload -------------------------------------------------------------------------------------


def folder_card(folder: str | Path, location: str, results: dict | None = None) -> str | None:
    """The card of checkpoint `folder` as it should be uploaded to `location` (a Hub repo id): with `results` (an
    uptraining run's `all_results.json`), the uptrained card; an hf-gqa card with its `## Use` section naming
    `location`; a folder without a card gets the conversion card. None when the folder has a card hf-gqa did not write
    (it is uploaded as it is)."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    readme = folder / "README.md"
    card = ModelCard.load(readme, ignore_metadata_errors=True) if readme.is_file() else None
    metadata = card.data.to_dict() if card is not None else {}
    ours = card is not None and "hf-gqa" in _strings(metadata.get("tags"))
    if card is not None and not ours:
        return None
    if results is not None:
        start = (results.get("config") or {}).get("model_name_or_path")
        base = _strings(metadata.get("base_model"))
        provenance = (
            Provenance.from_metadata(metadata, base[0], "recorded in this checkpoint's card")
            if ours and base
            else source_provenance(start)
        )
        return uptrained_card(config, results, location, provenance, model_name=location)
    if not ours:
        kv = {kind: (None, heads) for kind, heads in _kv_heads(config).items()}
        return model_card(config, kv, location=location)
    text = str(card)
    head, sep, rest = text.partition("\n## Use\n")
    if not sep:
        return text
    after = re.search(r"\n## ", rest)
    tail = rest[after.start() :] if after else ""
    return head.rstrip("\n") + "\n\n" + "\n".join(_use_section(config, location)) + tail


def _kv_heads(config: dict) -> dict[str, int]:
    resolved = resolve(config)
    return {b.kind: b.kv_heads for b in resolved.family.attention_blocks(resolved.view)}


__all__ = [
    "HUB_LICENSES",
    "RELATION",
    "Provenance",
    "check_card",
    "eval_results",
    "folder_card",
    "is_hub_id",
    "model_card",
    "pipeline_tag",
    "source_provenance",
    "uptrained_card",
]
