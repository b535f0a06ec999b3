"""Held-out attention benchmark for stage 1: synthetic and captured (q, k, v) sets, stage-1 training on a
train split, hard-Top-k metrics on a held-out split (`sla2-attnbench`)."""
