"""`hf-gqa list`."""

from ..registry import VARIANTS, list_model_types


def add_parser(sub) -> None:
    sub.add_parser("list", help="list the supported model types and variants")


def run(args) -> int:
    types = list_model_types()
    print("model types: " + ", ".join(t for t in types if not t.endswith(("_wgqa", "_routed"))))
    print("WGQA training forms (fold or convert them): " + ", ".join(t for t in types if t.endswith("_wgqa")))
    print(
        "routed-attention forms (kdgqa, dgqa, pgqa, gqkva, gkva, mkva): "
        + ", ".join(t for t in types if t.endswith("_routed"))
    )
    print("variants:")
    for name, cls in sorted(VARIANTS.items()):
        print(f"  {name:<8} {cls.summary}")
    return 0


__all__ = ["add_parser", "run"]
