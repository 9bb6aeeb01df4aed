import sys; sys.path.insert(0, "/work/wt-bake")
from pathlib import Path

import numpy as np

from cvgen.engine.context import ContextSettings, LlamaContext
from cvgen.engine.model import open_model
from cvgen.pack.steering import PackSteering
from cvgen.weights.bake import bake_vectors

model = Path.home()/".cache/cvgen/models/SmolLM2-135M-Instruct.Q4_1.gguf"
st = PackSteering(Path("/work/main/demo-pack")); vec = st.block_vectors(st.parse_assignments(("language=1",), None))
text = "Describe the sea at night.\n\nThe sea is a vast and mysterious realm"
def states(path, v):
    m = open_model(path); c = LlamaContext(m, ContextSettings(n_batch=512, n_seq=1, threads=2, capture=True))
    toks = m.tokenize(text, add_special=True); c.set_vectors(v); s = c.run([toks], wanted=list(range(1, 30))); c.close(); m.close(); return s
for b in (int(a) for a in sys.argv[1:]):
    one = {b: vec[b]}
    bake_vectors(model, Path("/tmp/s15/one.gguf"), one, record={})
    x = states(model, one); y = states(Path("/tmp/s15/one.gguf"), None)
    d = [float(np.abs(x[i]-y[i]).max()) for i in range(29)]; print(["%.1e" % v for v in d]); print("state max abs", ["%.0f" % float(np.abs(x[i]).max()) for i in range(29)])
    print(b, "first differing block:", next((i+1 for i, v in enumerate(d) if v > 0), None), "max", max(d), "norm", float(np.linalg.norm(vec[b])))
