"""Training a model: the loop (loop.py: the loss, train_one_epoch, evaluate, fit) first; around it, the
model it starts from (build), the optimizer and schedule (optim), what a fit records (history),
resuming a killed fit (resume) and data parallelism (parallel); main.py is the train stage's work."""
