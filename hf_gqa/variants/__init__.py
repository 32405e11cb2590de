"""Variants, one folder each (`gqa`, `wgqa`, `simgqa`, `routed`); `hf_gqa.registry` lists them."""
