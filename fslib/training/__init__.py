"""The distillation config, sampler, loop, setup, resume, teacher cache, sequence-level KD, on-policy, jobs."""
