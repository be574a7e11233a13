"""``chatnt serve``: a web page for people and a JSON API for programs.

One job per module: ``limits`` (what a public server refuses, the gate in front of the
model), ``service`` (the model and the functions both front ends call), ``model_info``
(what is loaded), ``examples`` (one-click example sequences and questions), ``app`` (the
Gradio page), ``http`` (the FastAPI routes), ``server`` (both on one port), ``cli`` (the
command). Only ``app``, ``http`` and ``server`` need the ``web`` extra (gradio, FastAPI);
nothing here is imported by ``import chatnt_core``.
"""
