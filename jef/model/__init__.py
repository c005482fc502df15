"""The joint-embedding model and its objective, built from a validated pipeline.

* :mod:`jef.model.build` -- :func:`~jef.model.build.build`, which makes every component of a pipeline with
  its registered factory, in dependency order, and runs the checks that need several at once;
* :mod:`jef.model.joint` -- :class:`~jef.model.joint.JointEmbedding` (online branch, target branch) and
  :class:`~jef.model.joint.Objective` (the energy over view pairs plus the functionals);
* :mod:`jef.model.targets` -- the built-in target makers: shared, stop-gradient and the EMA copy;
* :mod:`jef.model.shuffle_bn` -- shuffled BatchNorm (MoCo), across processes;
* :mod:`jef.model.sync_bn` -- BatchNorm statistics of the global batch.
"""
