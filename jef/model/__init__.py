"""The joint-embedding model and its objective, built from a validated pipeline.

* :mod:`jef.model.build` -- :class:`~jef.model.build.JointEmbedding`, :class:`~jef.model.build.Objective`, the
  target network and :func:`~jef.model.build.build`, which assembles them from the registered components;
* :mod:`jef.model.shuffle_bn` -- shuffled BatchNorm (MoCo), across processes;
* :mod:`jef.model.sync_bn` -- BatchNorm statistics of the global batch.
"""
