"""TransAct: realtime user-action sequence model (model, point-in-time data, training, serving inference).

Modules: :mod:`transact.model` (the model and its checkpoint format), :mod:`transact.features` (stored
sequences -> batch tensors), :mod:`transact.inference` (fast batched encoding and candidate scoring).
Nothing is imported here, so ``import transact`` stays cheap (torch loads only when a module needs it).
"""
