import sys

from chatgen.cli import main

# The guard matters: vLLM spawns its engine core in a child process that re-imports the main module.
if __name__ == "__main__":
    sys.exit(main())
