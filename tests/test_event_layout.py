"""The Python mirror of bpf/event.h matches the BTF of the shipped BPF object."""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import pytest
from conftest import need
from pktpath.core import event
from pktpath.core.loader import object_path


@pytest.fixture(scope="module")
def btf_types() -> dict[str, dict[str, Any]]:
    need(shutil.which("bpftool") is not None, "bpftool is not installed")
    out = subprocess.run(["bpftool", "-j", "btf", "dump", "file", object_path()],
                         capture_output=True, text=True, check=True).stdout
    return {t["name"]: t for t in json.loads(out)["types"] if t.get("name")}


@pytest.mark.parametrize("name, fields, layout", [
    ("pktpath_event", event.EVENT_FIELDS, event.EVENT_STRUCT),
    ("pktpath_config", event.CONFIG_FIELDS, event.CONFIG_STRUCT),
    ("pktpath_flow", event.FLOW_FIELDS, event.FLOW_STRUCT),
    ("pktpath_conn", event.CONN_FIELDS, event.CONN_STRUCT),
    ("pktpath_addr_bloom", event.ADDR_BLOOM_FIELDS, event.ADDR_BLOOM_STRUCT),
    ("pktpath_drop_key", event.DROP_KEY_FIELDS, event.DROP_KEY_STRUCT),
    ("pktpath_drop_slot", event.DROP_SLOT_FIELDS, event.DROP_SLOT_STRUCT),
    ("pktpath_expr_scratch", event.EXPR_SCRATCH_FIELDS, event.EXPR_SCRATCH_STRUCT),
])
def test_struct_mirror_matches_btf(btf_types: dict[str, dict[str, Any]], name: str,
                                   fields: list[tuple[str, str]], layout: Any) -> None:
    btf = btf_types[name]
    assert btf["kind"] == "STRUCT"
    assert layout.size == btf["size"]
    members = [(m["name"], m["bits_offset"] // 8) for m in btf["members"]]
    offsets = {"pktpath_event": event.EVENT_OFFSETS, "pktpath_config": event.CONFIG_OFFSETS,
               "pktpath_flow": event.FLOW_OFFSETS, "pktpath_conn": event.CONN_OFFSETS,
               "pktpath_addr_bloom": event.ADDR_BLOOM_OFFSETS,
               "pktpath_drop_key": event.DROP_KEY_OFFSETS,
               "pktpath_drop_slot": event.DROP_SLOT_OFFSETS,
               "pktpath_expr_scratch": event.EXPR_SCRATCH_OFFSETS}[name]
    assert [(f, offsets[f][0]) for f, _ in fields] == members
    # each field's size is the distance to the next one (the last one: to the end)
    ends = [off for _, off in members[1:]] + [btf["size"]]
    sizes = [end - off for (_, off), end in zip(members, ends, strict=True)]
    assert [offsets[f][1] for f, _ in fields] == sizes


@pytest.mark.parametrize("name, prefix, python_enum", [
    ("pktpath_hook", "PKTPATH_HOOK", event.Hook),
    ("pktpath_event_flag", "PKTPATH_F", event.EventFlag),
    ("pktpath_proto", "PKTPATH_PROTO", event.Proto),
    ("pktpath_counter", "PKTPATH_COUNTER", event.Counter),
    ("pktpath_ct_nat", "PKTPATH_CT", event.CtNat),
])
def test_enum_mirror_matches_btf(btf_types: dict[str, dict[str, Any]], name: str, prefix: str,
                                 python_enum: Any) -> None:
    values = {v["name"]: v["val"] for v in btf_types[name]["values"]}
    expected = {f"{prefix}_{m.name}": int(m) for m in python_enum}
    values.pop("PKTPATH_COUNTER_MAX", None)
    assert values == expected


def test_sizes_of_the_shared_constants(btf_types: dict[str, dict[str, Any]]) -> None:
    data = next(m for m in btf_types["pktpath_event"]["members"] if m["name"] == "data")
    assert event.EVENT_OFFSETS["data"] == (data["bits_offset"] // 8, event.SNAPLEN)
    assert event.EVENT_STRUCT.size == event.DATA_OFFSET + event.SNAPLEN
