"""Options are declared once (`hf_gqa.spec.OPTIONS`, `FolderOptions`): the CLI flags, the `--config` YAML keys, the
recipe's fields and `hf_gqa.convert`'s keywords all come from that declaration."""

import inspect

import pytest
import yaml

import hf_gqa
from hf_gqa.cli import CONVERT_KEYS, build_parser, main
from hf_gqa.conversion.folder import FolderOptions
from hf_gqa.core.options import declared
from hf_gqa.spec import OPTIONS


def _convert_flags() -> set[str]:
    parser = build_parser()
    convert = parser._subparsers._group_actions[0].choices["convert"]
    return {s for action in convert._actions for s in action.option_strings} | {
        a.dest for a in convert._actions if not a.option_strings
    }


def test_every_conversion_option_is_a_cli_flag_a_yaml_key_and_a_python_keyword():
    flags = _convert_flags()
    keywords = inspect.signature(hf_gqa.convert).parameters
    for option in OPTIONS.values():
        assert option.flag in flags, option.name
        assert option.name in CONVERT_KEYS, option.name
        assert option.name in keywords and keywords[option.name].default == option.default, option.name
    for option in declared(FolderOptions):
        assert option.name in CONVERT_KEYS and (option.flag in flags or option.name in flags), option.name


def test_every_conversion_option_is_a_recipe_field():
    pytest.importorskip("accelerate")
    import dataclasses

    from hf_gqa.training.arguments import UptrainArguments, conversion_options

    fields = {f.name for f in dataclasses.fields(UptrainArguments)}
    expected = {"convert_variant" if n == "variant" else n if n == "groups" else f"convert_{n}" for n in OPTIONS}
    assert expected <= fields  # e.g. convert_noise_in_eval, which the recipe lacked before
    args = UptrainArguments(convert_variant="pgqa", groups=2, convert_noise_in_eval=True)
    assert conversion_options(args) == {
        "variant": "pgqa",
        "groups": 2,
        "init": "mean",
        "seed": 0,
        "noise_in_eval": True,
    }


@pytest.mark.parametrize("key", ["force", "in_memory", "private", "noise_in_eval"])
@pytest.mark.parametrize("value", ["false", "no", 1])
def test_yaml_booleans_must_be_yaml_booleans(tmp_path, capsys, key, value):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"source": str(tmp_path), "output": str(tmp_path / "out"), key: value}))
    assert main(["convert", "--config", str(spec)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"hf-gqa: error: --config {str(spec)!r}: {key} must be true or false, got {value!r}"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("attention", [5, [5], ("cross", None), {"cross": 1}])
def test_an_attention_that_is_not_kind_names_is_a_one_line_error(attention):
    from hf_gqa.errors import HfGqaError
    from hf_gqa.spec import GQASpec

    with pytest.raises(HfGqaError, match="attention must name attention kinds") as error:
        GQASpec(groups=2, attention=attention)
    assert "\n" not in str(error.value)
