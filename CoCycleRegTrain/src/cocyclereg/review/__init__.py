"""``cocyclereg review``: registration results on 3D Slicer's slice views in a web browser.

:mod:`~cocyclereg.review.results` reads a result folder (no Slicer, no trame);
:mod:`~cocyclereg.review.scene` loads a pair into a Slicer MRML scene;
:mod:`~cocyclereg.review.app` is the trame page; :mod:`~cocyclereg.review.command` the command.
The last three need the ``review`` extra (trame-slicer); importing this package does not.
"""
