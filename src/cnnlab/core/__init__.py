"""What every stage script uses around its own work: params.yaml read and validated (params,
checks), where each output goes (paths), outputs written all-or-nothing (outputs) and the stage
process itself (stage). dvc.yaml lists this folder as one dependency of every stage: each of them
imports all of it."""
