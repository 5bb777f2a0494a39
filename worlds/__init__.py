"""Synthetic worlds and the small models trained on them, which prove each technique against ground truth.

Each world renders scenes whose content is known exactly, so a technique's effect can be scored:
``shapes`` (2D shapes, the ``assets/shapes-sd`` text-to-image model) and ``moving_shapes`` (moving
2D shapes, the ``assets/moving-shapes-wan`` text-to-video model). Worlds import the toolkit
(``attn_processors``); the toolkit never imports a world.
"""
