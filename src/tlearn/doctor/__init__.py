"""The dataset doctor: label errors, duplicates and leakage found before training.

Built so far: :mod:`tlearn.doctor.labels` (confident learning on out-of-fold probabilities,
our own implementation of the published method; cleanlab, AGPL-3.0, is only a test-time
cross-check) and :mod:`tlearn.doctor.duplicates` (exact and near duplicates, train/test
leakage). The ``tlearn doctor`` command and its report are not built yet.
"""
