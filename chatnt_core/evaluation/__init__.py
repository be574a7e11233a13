"""Evaluation of a trained model on an instruction dataset, and calibration of its answers.

* ``parsing`` - answer text -> label or value, per task card (``parse_answer``,
  ``match_task``); light, used by the Python API too.
* ``metrics`` - MCC, F1, Pearson, AUROC, and how unparseable answers count.
* ``evaluate`` - ``evaluate_model``: batched generation, scoring, report files.
* ``calibrate`` - Platt calibrators per binary task, stored next to a checkpoint.
* ``plots`` - confusion matrices, scatter plots, reliability diagrams (matplotlib, Agg).
* ``cli`` - ``chatnt evaluate`` and ``chatnt calibrate``.

Nothing is imported here, so ``chatnt --help`` does not pay for torch or matplotlib.
"""
