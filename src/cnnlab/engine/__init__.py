"""A trained or training model and its data on the device: batches cut from splits held there
(batches), checkpoints that rebuild a model (checkpoints) and one way to run it over a split
(inference). dvc.yaml lists this folder as one dependency of the stages that train, evaluate and
analyze a model: each of them imports all of it."""
