"""Diffusion math (schedules, samplers, classifier-free guidance); model-agnostic: samplers take a denoise fn."""
