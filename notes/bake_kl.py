import sys; sys.path.insert(0, "/work/wt-bake")
from pathlib import Path

import numpy as np

from cvgen.engine.context import ContextSettings, LlamaContext
from cvgen.engine.model import open_model
from cvgen.pack.steering import PackSteering

pack = Path("/work/main/demo-pack"); model = Path.home()/".cache/cvgen/models/SmolLM2-135M-Instruct.Q4_1.gguf"
st = PackSteering(pack); vec = st.block_vectors(st.parse_assignments(("language=1",), None))
text = "Describe the sea at night.\n\nThe sea is a vast and mysterious realm, where the boundaries"
def rows(path, v, single):
    m = open_model(path); c = LlamaContext(m, ContextSettings(n_batch=512, n_seq=1, threads=2, capture=False, n_outputs=512))
    toks = m.tokenize(text, add_special=True); c.set_vectors(v)
    if not single:
        c.run([toks], outputs=[list(range(len(toks)))]); out = c.logits()
    else:
        c.run([toks[:8]], outputs=[list(range(8))]); outs=[c.logits()]
        for i in range(8, len(toks)):
            c.append([(toks[i], i, 0, True)]); outs.append(c.logits())
        out = np.concatenate(outs)
    c.close(); m.close(); return out
for single in (False, True):
    a = rows(model, vec, single); b = rows(Path("/tmp/s15/baked.gguf"), None, single)
    print("single-token decodes" if single else "one batch", "max |logit diff|", float(np.abs(a-b).max()), "argmax differ at", np.nonzero(a.argmax(1)!=b.argmax(1))[0][:5])
