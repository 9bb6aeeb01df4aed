import sys; sys.path.insert(0, "/work/wt-bake")
from pathlib import Path

import numpy as np

from cvgen.engine.context import ContextSettings, LlamaContext
from cvgen.engine.model import open_model
from cvgen.pack.steering import PackSteering
from cvgen.serve.generation import Generator, Job, Sampling
from cvgen.weights.bake import bake_vectors

model = Path(sys.argv[1]); baked = Path(sys.argv[2])
st = PackSteering(Path("/work/main/demo-pack")); vec = st.block_vectors(st.parse_assignments(("language=1",), None))
bake_vectors(model, baked, vec, record={"selection": "language=1"})
text = "Describe the sea at night.\n\nThe sea is a vast and mysterious realm, where the boundaries"
def logits(path, v):
    m = open_model(path); c = LlamaContext(m, ContextSettings(n_batch=512, n_seq=1, threads=2, capture=False, n_outputs=512))
    toks = m.tokenize(text, add_special=True); c.set_vectors(v); c.run([toks], outputs=[list(range(len(toks)))]); out = c.logits(); c.close(); m.close(); return out
a, b = logits(model, vec), logits(baked, None)
print("max |logit diff|", float(np.abs(a - b).max()))
prompts = ["Describe the sea at night.", "Write a letter to a friend.", "Explain how bread rises.", "Tell me a story about a fox.", "What is a good breakfast?", "Describe a city in winter."]
def texts(path, v):
    m = open_model(path); g = Generator(m, ctx_size=512, threads=2); out = []
    for p in prompts:
        out.append(g.generate(Job(m.tokenize(p, add_special=True), v, 32, Sampling(temperature=0))).text)
    g.close(); m.close(); return out
x, y = texts(model, vec), texts(baked, {})
print("greedy texts equal:", sum(i == j for i, j in zip(x, y)), "of", len(x))
