"""A model and its data on the training device: batches cut from splits held there (batches), the
zoo's shared layers (layers), checkpoints that rebuild a model (checkpoints) and one way to run it
over a split (inference). dvc.yaml lists this folder as one dependency of the stages that train,
evaluate and analyze a model: their one list for every model needs all of it (layers.py for the
models built from its blocks)."""
