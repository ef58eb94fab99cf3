"""Stage 8: scale-out on an existing distributed engine.

- :mod:`tlearn.scale.ray`: batch prediction and featurisation on Ray Data (an actor pool
  of :class:`~tlearn.predictor.Predictor`), fine-tuning on Ray Train. Needs the extra
  ``tlearn[ray]``; nothing here is imported by ``import tlearn``.

Fine-tuning under ``torchrun`` needs nothing from here: the loop reads its launcher's
environment (:mod:`tlearn.finetune.distributed`).
"""
