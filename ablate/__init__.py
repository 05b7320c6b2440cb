"""ablate: honest preference-tuning ablations (DPO / SimPO / ORPO × LoRA rank × β × γ × seed) on Ray."""

__version__ = "0.1.0"
