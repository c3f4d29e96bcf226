"""Held-out evaluation of a checkpoint: multiple-choice accuracy on a run's eval split or a Video-MME-shaped file."""
