"""MTP knowledge: which runtimes run it (``registry``), which models are trained for it
(``detect``), and whether a backend is running it now (``state``).

May import: nothing else of mtproxy (plain data and rules; gguf for reading model files).
"""
