"""Code for a Python process in which importing torch or transformers fails: what the torch-free parts of
zsad (the inference loop, the deploy runtime, the command line's parser) promise to run in."""

BLOCK_TORCH = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers"):
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, Block())
"""

CLI = BLOCK_TORCH + """
from zsad.cli import main
sys.exit(main(sys.argv[1:]))
"""
