"""Code for a Python process that can import only what the base (runtime) install holds: importing torch,
transformers or any other package of the ``torch`` and ``openvino`` extras fails there. The torch-free parts
of zsad (the inference loop, the deploy runtime, the command line's parser) promise to run in it."""

from zsad.cli import EXTRAS

BLOCK_TORCH = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in %r:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked in this test)", name=name)
sys.meta_path.insert(0, Block())
""" % (sorted(EXTRAS),)

CLI = BLOCK_TORCH + """
from zsad.cli import main
sys.exit(main(sys.argv[1:]))
"""
