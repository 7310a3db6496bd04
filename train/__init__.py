"""The bundled trainer (issue 6): tokenizer, token shards, model, pretraining, SFT, serving."""
