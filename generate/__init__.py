"""Generation: presets and weights, CLIP guidance, the sampler, jobs and the worker."""
