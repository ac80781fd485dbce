"""dockyard: Docker Machine rebuilt in Python, with its own engine.

The subpackages live in the repository's top-level folders (provisioner/, drivers/, templates/, engine/);
this folder links them under one root package so that they install and import as `dockyard.*`
(see docs/architecture.md).
"""

__version__ = "0.1.0"
