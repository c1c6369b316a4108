"""helpers: the small library behind the instance-retrieval teaching notebooks.

Core modules (shared by every notebook): ``backbones``, ``images``, ``data``, ``demo_dataset``,
``downloads``, ``features``, ``pooling``, ``whitening``, ``evaluate``, ``methods``, ``viz``.
One module per paper: ``ack``, ``actnet``, ``multilayer``, ``roi``, ``clusters``.
See NOTES.md at the repository root for the API contract between them.
"""

__version__ = "0.1.0"
