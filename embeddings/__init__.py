"""PinnerFormer daily user embeddings: model, training objectives, evaluation and the daily job.

See ``embeddings/pinnerformer.py`` (model), ``loss.py`` (objectives), ``train.py`` / ``evaluate.py`` /
``compare.py`` (offline), ``daily_job.py`` (the daily snapshot + Kafka publish).
"""
