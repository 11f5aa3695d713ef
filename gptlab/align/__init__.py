"""Alignment from feedback: the feedback simulation, the reward model, best-of-N, RL and DPO.

``gptlab.align.common`` holds what every stage shares (held-out records, batched answers,
the gold-judge win rate, rewards by name, sequence log-probs).
"""
