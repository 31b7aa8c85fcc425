"""google/pprof's ``profile.proto``, compiled with grpcio-tools for each run,
and a decoder of profiles by labels: the tests judge greenprof's pprof by
the real schema, not by greenprof's own idea of it.

``tests/data/profile.proto`` is google/pprof's ``proto/profile.proto`` as
published (commit b9395ee17fa0d0013c3fd96ac9482318422ac337, Apache-2.0).
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs
from grpc_tools import protoc

from greenprof import Frame

PROTO = Path(__file__).parent / "data" / "profile.proto"


def compile_profile_proto(out: Path) -> ModuleType:
    """``profile_pb2``, generated into ``out`` and imported."""
    status = protoc.main(["protoc", f"-I{PROTO.parent}", f"--python_out={out}", PROTO.name])
    assert status == 0
    spec = importlib.util.spec_from_file_location("profile_pb2", out / "profile_pb2.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


Labels = frozenset[tuple[str, object]]


@attrs.frozen
class LabelledProfile:
    """A parsed profile: per label set, per stack (outermost frame first),
    the sample's values."""

    message: Any
    strings: list[str]
    sample_types: list[tuple[str, str]]
    samples: dict[Labels, dict[tuple[Frame, ...], list[int]]]

    def totals(self, **labels: object) -> list[int]:
        """The values summed over the samples that have all of ``labels``."""
        total = [0] * len(self.sample_types)
        for found, stacks in self.samples.items():
            if set(labels.items()) <= found:
                for values in stacks.values():
                    total = [a + b for a, b in zip(total, values, strict=True)]
        return total


def decode_labelled(profile_pb2: ModuleType, data: bytes) -> LabelledProfile:
    message = profile_pb2.Profile()
    message.ParseFromString(gzip.decompress(data))
    strings = list(message.string_table)
    functions = {f.id: f for f in message.function}
    locations = {loc.id: loc for loc in message.location}
    samples: dict[Labels, dict[tuple[Frame, ...], list[int]]] = {}
    for sample in message.sample:
        labels = frozenset(
            (strings[label.key], strings[label.str] if label.str else label.num)
            for label in sample.label
        )
        assert len(labels) == len(sample.label)  # no label twice
        frames = []
        for location_id in sample.location_id:
            (line,) = locations[location_id].line
            function = functions[line.function_id]
            frames.append(Frame(strings[function.filename], strings[function.name], line.line))
        stack = tuple(reversed(frames))  # pprof lists the leaf first
        stacks = samples.setdefault(labels, {})
        assert stack not in stacks  # one sample per label set and stack
        stacks[stack] = list(sample.value)
    sample_types = [(strings[t.type], strings[t.unit]) for t in message.sample_type]
    return LabelledProfile(message, strings, sample_types, samples)
