"""Trained fixture models: a procedural shapes data set, training and an analyser.

`python -m stageflow.inference.training --out fixtures/trained` (`make fixtures-train`)
retrains everything from scratch; `analysis.score` checks what an image shows.
"""
