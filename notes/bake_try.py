import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, "/work/wt-bake")
from cvgen.pack.steering import PackSteering

pack = Path("/work/main/demo-pack"); model = Path.home()/".cache/cvgen/models/SmolLM2-135M-Instruct.Q4_1.gguf"
st = PackSteering(pack)
sel = st.parse_assignments(("language=1",), None)
t = time.time()
#bake_vectors(model, Path("/tmp/s15/baked.gguf"), st.block_vectors(sel), record={"pack": str(pack), "selection": "language=1"})
print("bake", time.time()-t, "s; peak RSS MiB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024)
bins = Path.home()/".cache/cvgen/llama.cpp/0c1e570-shared/bin"
line = subprocess.run([sys.executable, "-m", "cvgen.cli", "commands", str(pack), "--target", "llama-completion", "--set", "language=1", "--model-path", str(model)], capture_output=True, text=True, cwd="/work/wt-bake").stdout.strip()
vec = shlex.split(line)[3:]
def run(m, extra):
    r = subprocess.run([str(bins/"llama-completion"), "-m", str(m), "-p", "Describe the sea at night.", "-n", "40", "--temp", "0", "-t", "2", "-no-cnv", "--no-warmup", "-s", "0", *extra], capture_output=True, text=True)
    return r.stdout
a = run(model, vec); b = run("/tmp/s15/baked.gguf", []); c = run(model, [])
print(repr(a)); print(repr(b)); print(repr(c)); print("baked == cvec:", a == b, "; baked != plain:", b != c)
