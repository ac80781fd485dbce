"""The image part of the engine: layer and image stores, load/save/import (loadsave), overlay roots, safe tar."""
