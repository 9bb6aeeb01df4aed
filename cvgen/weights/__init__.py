"""Tools that write model weights (issue 16 and later, not built yet): bake a control vector
into a model's biases, so that front-ends that cannot load vectors still steer. They will read
vectors from `cvgen.vectors` and packs from `cvgen.pack`."""
