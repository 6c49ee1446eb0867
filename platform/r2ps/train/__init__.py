"""Training both encoders on Ray Train + DeepSpeed: one loop, one launcher."""
