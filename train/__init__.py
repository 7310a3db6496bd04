"""The bundled trainer: tokenizer, token shards, model, pretraining, SFT, preference tuning, evaluation, serving."""
