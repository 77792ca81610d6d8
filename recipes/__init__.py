"""Runnable benchmark recipes for odernn (``python -m recipes.<name> --help``).

The recipes own command lines, progress bars, plots and files; the library (:mod:`odernn`) owns none of these.
The shared machinery is split by concern:

- :mod:`recipes._cli`: the shared flags, their validation, the recorded command line, clean error exits;
- :mod:`recipes._files`: atomic writes (bytes, text, JSON, CSV, tensors) and the CSV reader;
- :mod:`recipes._random`: seeding, and capturing/restoring every random state;
- :mod:`recipes._checkpoint`: checkpoints loaded without executing code, and the resume settings check;
- :mod:`recipes._rundir`: the run-folder lock, what a run may do with an existing folder, what config.json records;
- :mod:`recipes._distributed`: ``--device``, torchrun set-up, per-rank loaders, all-reduced sums;
- :mod:`recipes._loops`: one training epoch and one evaluation pass, with NFE accounting;
- :mod:`recipes._report`: metrics.csv, summary.json, figures and the model comparison;
- :mod:`recipes._driver`: :class:`~recipes._driver.RecipeSpec` and :func:`~recipes._driver.run_recipe`, which
  tie the above together for every recipe.

Image recipes: :mod:`recipes._image_models` (Table 3 classifiers), :mod:`recipes._image_data` (verified MNIST and
CIFAR10 readers), :mod:`recipes._image_recipe` (their driver). :mod:`recipes.report` writes the reproduction tables
and figures; :mod:`recipes.reproduce` runs the full-length protocol.
"""
