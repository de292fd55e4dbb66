"""What a stage is told: params.yaml read and validated (params) and where every output goes (paths).
dvc.yaml lists this folder as one dependency of every stage: each of them imports all of it."""
