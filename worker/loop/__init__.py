"""The worker actor and its training step.

- ``Worker``, ``WorkerPlan`` (trainer.py): the loop a worker actor runs; ``Worker._step`` is one step.
- ``FlatParams``, ``ModelBuffers`` (flat.py): parameters, gradients and model buffers as views of
  flat buffers.
- ``Embedding``, ``EmbeddingBag`` (embedding.py): modules whose rows live on the shards.
- ``resolve_loss`` (losses.py): cross-entropy, MSE, BCE, KL by name.
- ``evaluate``, ``score`` (scoring.py): test loss, accuracy and AUC.
- ``StepClock`` (pace.py): steady throughput, time to a target loss, stragglers.
- ``WorkerChaos`` (chaos.py): SIGKILL or hang at a step.
- ``WorkerMetrics`` (metrics.py): steps, samples/s, loss, latency, bytes for the dashboard.
"""
