import sys; sys.path.insert(0, "/work/wt-bake")
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize

from cvgen.weights import gguf_copy

src = Path.home()/".cache/cvgen/models/SmolLM2-135M-Instruct.Q4_1.gguf"
r = GGUFReader(src)
orig_plan = gguf_copy._plan
def plan_f32(reader, added):
    out = []
    for name, data, raw in orig_plan(reader, added):
        if raw is not None and raw != GGMLQuantizationType.F32:
            data = dequantize(data, raw).astype(np.float32); raw = None
        out.append((name, data, raw))
    return out
gguf_copy._plan = plan_f32
from gguf import GGUFValueType

gguf_copy.rewrite_gguf(src, Path("/tmp/s15/smol-f32.gguf"), fields={"general.file_type": (0, GGUFValueType.UINT32)} if False else {}, added={})
print("ok")
