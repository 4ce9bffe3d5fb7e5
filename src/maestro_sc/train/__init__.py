"""Lightning training layer: runs MAESTRO training on a sample index.

``data`` streams sample sets from the :class:`~maestro_sc._data.SampleIndex` (dataset, sampler,
collate), ``module`` is the Lightning training plan (one step, optimiser, EMA teacher) and
``runner`` builds the network and the :class:`pytorch_lightning.Trainer` and runs the fit
(:func:`maestro_sc.train.runner.fit_maestro`, called by :func:`maestro_sc.tl.pretrain`).
Nothing is imported here, so ``import maestro_sc.train`` loads neither torch nor Lightning.
"""
