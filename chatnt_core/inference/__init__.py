"""Answering with a built model: what happens between a tokenized batch and its answers.

In data-flow order: ``encoding_cache`` (encoder outputs kept per sequence),
``prefix_cache`` (the decoder's state over the prompt start every row shares),
``generation`` (one prompt pass, then KV-cached decoding), ``drafting`` (guessed answer
tokens the decoding step checks), ``scoring`` and ``candidate_tree`` (log-likelihoods of
fixed answer phrasings: the P(yes) classifier's input), ``conversation`` (multi-turn
chat). Speed-ups inside decoder calls: ``rows_first`` (linear layers on few rows),
``adapter_decoding`` (LoRA as plain products), ``precision`` (bfloat16 weights).
"""
